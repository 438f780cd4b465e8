"""Kernel specs: what an optimizer registers to run on the engine, and every specialization it launches.

An optimizer's update kernel follows the calling convention of ``kernels/multi_tensor.py``: the
address tables of the parameters, the gradients and each of its state lists, then the engine's
common arguments, then the common constexprs. Its spec names the kernel, its state lists and the
columns of its per-group hyper-parameter row; the engine needs nothing else to plan, launch,
compile (the torch.compile custom op) and list (``kernel_specializations``) it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from . import runtime

__all__ = ["KernelSpec", "register", "registered", "lookup", "kernel_specializations"]

# The engine's arguments after the address tables, in order, with their types as the engine passes
# them (table_numel < 2**31, so Triton types it i32); kernels/multi_tensor.py documents each.
COMMON_SIGNATURE = {
    "numels_ptr": "*i64",
    "groups_ptr": "*i32",
    "first_step_ptr": "*i8",
    "slots_ptr": "*i32",
    "chunks_ptr": "*i64",
    "hyper_ptr": "*fp64",
    "step_ptr": "*i64",
    "desc_ptr": "*fp64",
    "table_ptr": "*fp64",
    "table_numel": "i32",
    "advance": "i32",
    "lr_out_ptr": "*fp64",
    "ticket_ptr": "*i32",
    "n_groups": "i32",
    "write_back": "i32",
    "n_tensors": "i32",
    "clear_first": "i32",
    "grad_scale_ptr": "*fp32",
    "found_inf_ptr": "*fp32",
    "clip_coef_ptr": "*fp64",
}
COMMON_CONSTEXPRS = ("DTYPE", "COMPUTE_DTYPE", "ALIGNED", "SCALED", "BLOCK_SIZE", "CHUNK_BLOCKS")


def _always(row: tuple) -> bool:
    return True


def _never(row: tuple) -> bool:
    return False


@dataclass(frozen=True)
class KernelSpec:
    """One optimizer's update kernel, as the engine sees it.

    name: the optimizer's name (``"sgd"``), one name through kernel, functional and optimizer.
    module, kernel: where the ``@triton.jit`` update kernel lives (``"fused_lr.kernels.sgd"``,
        ``"sgd_kernel"``); imported at the first launch, never on platforms without Triton.
    state_lists: the per-parameter state tensors the kernel reads and writes, in the order of its
        address-table arguments (``("momentum_buffer",)``); each has its parameter's dtype, shape
        and strides.
    hyper_columns: the per-group hyper-parameter row, in order; the kernel module defines
        ``HYPER_<COLUMN>`` as each one's index and ``HYPER_WIDTH``, the table's row stride.
    keeps_state: whether a group with this hyper row has state tensors (SGD: momentum != 0); the
        state addresses of the others are 0, and the kernel must not touch them.
    zero_state: whether a new state tensor of such a group starts as zeros rather than
        uninitialised memory (besides on steps AMP may skip, where it always does).
    scalar_states: per-parameter one-element float32 state tensors the kernel reads and writes
        (Adam's ``step``), not shaped like the parameter; one address table each, after the state
        lists' tables. Kept wherever ``keeps_state`` holds. (Added for Adam; () for SGD.)
    keeps_list: ``keeps_list(row, k)``: whether a group that keeps state keeps state list ``k``
        (Adam keeps ``max_exp_avg_sq`` only with amsgrad); None: every list. A list not kept has
        address 0 and ``None`` tensors, and the kernel must not touch it. (Added for Adam.)
    """

    name: str
    module: str
    kernel: str
    state_lists: tuple[str, ...]
    hyper_columns: tuple[str, ...]
    keeps_state: Callable[[tuple], bool] = _always
    zero_state: Callable[[tuple], bool] = _never
    scalar_states: tuple[str, ...] = ()
    keeps_list: Callable[[tuple, int], bool] | None = None

    def kept(self, row: tuple, k: int) -> bool:
        """Whether a group with hyper row ``row`` keeps state list ``k`` (``k`` past the state lists:
        a scalar state, kept with the group's state)."""
        if not self.keeps_state(row):
            return False
        return k >= len(self.state_lists) or self.keeps_list is None or self.keeps_list(row, k)

    def n_tables(self) -> int:
        """Address tables after the gradients': the state lists', then the scalar states'."""
        return len(self.state_lists) + len(self.scalar_states)

    def jit(self) -> Any:
        """The ``@triton.jit`` kernel, looked up at each launch (so a patched module attribute,
        e.g. the host-overhead benchmark's no-op kernel, takes effect)."""
        module = sys.modules.get(self.module)  # (import_module costs microseconds at every launch)
        fn = getattr(module if module is not None else importlib.import_module(self.module), self.kernel)
        if self.name not in _checked:
            _check_convention(self, fn)
            _checked.add(self.name)
        return fn

    def hyper_width(self) -> int:
        return importlib.import_module(self.module).HYPER_WIDTH


_registry: dict[str, KernelSpec] = {}
_checked: set[str] = set()


def register(spec: KernelSpec) -> KernelSpec:
    """Make ``spec`` known to the engine (the custom op finds it by name; the AOT list includes it)."""
    known = _registry.get(spec.name)
    if known is not None and known != spec:
        raise ValueError(f"a different kernel spec is already registered as {spec.name!r}")
    _registry[spec.name] = spec
    return spec


def registered() -> tuple[KernelSpec, ...]:
    return tuple(_registry.values())


def lookup(name: str) -> KernelSpec:
    return _registry[name]


def _check_convention(spec: KernelSpec, fn: Any) -> None:
    """The kernel's arguments follow kernels/multi_tensor.py and its hyper columns the spec's."""
    names = list(getattr(fn, "arg_names", None) or [])
    n_addr = 2 + spec.n_tables()
    want = [*COMMON_SIGNATURE, *COMMON_CONSTEXPRS]
    if names and (len(names) != n_addr + len(want) or names[n_addr:] != want):
        raise TypeError(f"{spec.module}.{spec.kernel} does not take the engine's arguments: {names}")
    module = importlib.import_module(spec.module)
    for i, column in enumerate(spec.hyper_columns):
        if getattr(module, f"HYPER_{column.upper()}", None) != i:
            raise TypeError(f"{spec.module}.HYPER_{column.upper()} is not {i}, the spec's column index")
    if len(spec.hyper_columns) > module.HYPER_WIDTH:
        raise TypeError(f"{spec.module}.HYPER_WIDTH is smaller than the spec's {len(spec.hyper_columns)} columns")


# Argument types of the norm kernels (fused clipping), as the engine passes them.
_PARTIALS_SIGNATURE = {
    "grad_addrs_ptr": "*i64",
    "numels_ptr": "*i64",
    "chunks_ptr": "*i64",
    "partials_ptr": "*fp64",
    "offset": "i32",
}
_FINALIZE_SIGNATURE = {
    "partials_ptr": "*fp64",
    "n_partials": "i32",
    "extra_ptr": "*fp64",
    "grad_scale_ptr": "*fp32",
    "max_norm_ptr": "*fp64",
    "norm_out_ptr": None,  # *fp32 or *fp64: the norm's dtype
    "clip_coef_ptr": "*fp64",
}


def kernel_specializations() -> list[dict[str, Any]]:
    """Every (kernel, constexpr) combination the engine can launch for the registered specs, at
    the production launch configuration, as ``dict(name, kind, fn, signature, constexprs, options,
    dtype, aligned)``: ready for ``triton.compile(triton.compiler.ASTSource(fn, signature,
    constexprs), target=..., options=options)``. ``kind`` is a spec's name (its update kernel),
    ``"norm_partials"`` or ``"norm_finalize"`` (fused gradient clipping); ``dtype`` is the storage
    dtype the kernel reads (the norm's dtype for the finalize kernel) and ``aligned`` is None where
    it does not apply.
    """
    if runtime.mt_kernels is None:
        return []
    norm = runtime.norm_kernels
    cfg = runtime.launch_config(production=True)
    sizes = {"BLOCK_SIZE": cfg["BLOCK_SIZE"], "CHUNK_BLOCKS": cfg["CHUNK_BLOCKS"]}
    specs = []

    def add(kind, name, fn, base_signature, constexprs, dtype, aligned):
        signature = dict(base_signature)
        signature.update({k: "constexpr" for k in constexprs})
        options = runtime.kernel_options(cfg, dtype)  # every kernel's, as the launches pass them
        specs.append(dict(name=name, kind=kind, fn=fn, signature=signature, constexprs=constexprs,
                          options=options, dtype=dtype, aligned=aligned))

    for torch_dtype in runtime.KERNEL_DTYPES:
        tl_dtype = runtime.triton_dtype(torch_dtype)
        blocks = {"DTYPE": tl_dtype, "COMPUTE_DTYPE": runtime.mt_kernels.compute_dtype(tl_dtype)}
        for aligned in (True, False):
            for spec in registered():
                fn = spec.jit()
                addrs = {name: "*i64" for name in fn.arg_names[: 2 + spec.n_tables()]}
                for scaled in (False, True):
                    add(spec.name, f"{spec.kernel}[{tl_dtype}, ALIGNED={aligned}, SCALED={scaled}]", fn,
                        {**addrs, **COMMON_SIGNATURE}, {**blocks, "ALIGNED": aligned, "SCALED": scaled, **sizes},
                        torch_dtype, aligned)
            for norm_inf in (False, True):
                add("norm_partials", f"grad_norm_partials_kernel[{tl_dtype}, ALIGNED={aligned}, NORM_INF={norm_inf}]",
                    norm.grad_norm_partials_kernel, _PARTIALS_SIGNATURE,
                    {**blocks, "ALIGNED": aligned, "NORM_INF": norm_inf, **sizes}, torch_dtype, aligned)
    for norm_dtype in (torch.float32, torch.float64):
        tl_dtype = runtime.triton_dtype(norm_dtype)
        finalize_signature = dict(_FINALIZE_SIGNATURE, norm_out_ptr="*fp64" if norm_dtype == torch.float64 else "*fp32")
        for norm_inf in (False, True):
            add("norm_finalize", f"grad_norm_finalize_kernel[{tl_dtype}, NORM_INF={norm_inf}]",
                norm.grad_norm_finalize_kernel, finalize_signature,
                {"NORM_INF": norm_inf, "NORM_DTYPE": tl_dtype, "BLOCK": norm.FINALIZE_BLOCK}, norm_dtype, None)
    return specs

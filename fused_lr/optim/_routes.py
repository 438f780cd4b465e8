"""The update routes ``FusedOptimizer.step()`` chooses between, for any fused optimizer.

Gathering (``_collect_all``): each group's parameters with a gradient, their gradients and their
state tensors (the kernel spec's state lists), every gradient checked before anything changes.
Then one of: the torch path (``_step_torch``: the optimizer's ``_update`` per group, after AMP
unscaling and clipping in torch ops); the Triton path (``_step_triton``: every group in one
``engine`` update per dtype, tensors the kernels cannot take handed to the torch path; its steady
state ``_step_steady``; inside torch.compile ``_step_triton_compiled``, the engine's custom op);
sparse gradients (``_step_sparse``: torch's for-loop) and ``differentiable=True``
(``_step_differentiable``: torch's for-loop recorded by autograd).
"""

from __future__ import annotations

import math
import operator
import weakref
from itertools import repeat
from typing import Any

import torch
from torch import Tensor

from .. import _device, engine
from .._layout import flat_ok, is_dense, overlaps_itself
from ..functional.clip import grad_norm_torch, norm_dtype, scaled_grads
from ._dtensor import dtensor_type, like_param, local

__all__ = ["UpdateRoutes"]

CAPTURE_NEW_STATE = (
    "fused_lr: this step would create state tensors (a parameter's first step with state) while a CUDA graph "
    "is being captured; state is allocated and flagged from the host. Run the step eagerly first (torch's "
    "recipe: a few warm-up iterations on a side stream before capturing), so that every parameter that "
    "will have a gradient in the graph has its state."
)


def _flat(p: Tensor, g: Tensor, states: list) -> bool:
    """Parameter, gradient and state tensors (None: one to be made in ``p``'s layout) can be
    updated as flat arrays."""
    return all(flat_ok(p, g, s) for s in states) if states else flat_ok(p, g)


def _pick(xs: list, ix: list[int]) -> list:
    return [xs[i] for i in ix] if xs else []


_GRAD = operator.attrgetter("grad")


class _Collected:
    """``_collect_all``'s answer kept for the next steps (the torch path's steady state): valid
    while the groups' params lists, every parameter's storage address, every gradient object
    (weak references: a gradient freed or replaced, ``zero_grad(set_to_none=True)`` included,
    misses), the state dict and its per-group cache, and which groups keep state are as they
    were. A miss costs one full collection, as without the cache. It keeps each group's params
    and state lists, never the grads (``zero_grad()`` frees them)."""

    __slots__ = ("groups", "params", "param_key", "grad_ids", "alive", "refs", "state_key", "keeps", "work", "hits",
                 "__weakref__")

    def __init__(self, groups, params, grads, state_key, keeps, work) -> None:
        self.groups = groups
        self.params = params
        self.param_key = tuple(map(torch.Tensor.data_ptr, params))
        self.grad_ids = list(map(id, grads))
        self.alive = True
        me = weakref.ref(self)

        def died(_ref) -> None:
            owner = me()
            if owner is not None:
                owner.alive = False

        # (While every referent is alive, equal ids mean the same objects.)
        self.refs = list(map(weakref.ref, grads, repeat(died)))
        self.state_key = state_key
        self.keeps = keeps
        self.work = work
        self.hits = 0  # steps it served


class UpdateRoutes:
    """The update routes of ``FusedOptimizer`` (see the module docstring); a mixin of its class."""

    # ------------------------------------------------------------------ gathering

    @property
    def _state_keys(self) -> tuple[str, ...]:
        """Every per-parameter state key: the kernel spec's state lists (tensors shaped like the
        parameter), then its scalar states (one-element float32 tensors: Adam's ``step``)."""
        return self._kernel.state_lists + self._kernel.scalar_states

    def _new_state(self, k: int, p: Tensor, zeros: bool) -> Tensor:
        """A new tensor for state key ``k`` of (local) parameter ``p``: in ``p``'s layout (zeros or
        uninitialised), or for a scalar state a zero float32 0-dim tensor on ``p``'s device (where
        torch's fused and capturable Adam keep ``step``)."""
        if k >= len(self._kernel.state_lists):
            return torch.zeros((), dtype=torch.float32, device=p.device)
        return (torch.zeros_like if zeros else torch.empty_like)(p, memory_format=torch.preserve_format)

    def _group_states(self, group: dict[str, Any], gi: int) -> list[list[Tensor | None]]:
        """The group's state tensors, one list per state key in param order, cached between steps.

        The cache is dropped whenever fused_lr itself changes the state (a new tensor, a load, a new
        group) or the state dict's size changes; a tensor swapped into ``opt.state[p]`` by hand is
        not noticed (modify state in place, or use load_state_dict).
        """
        state, keys = self.state, self._state_keys
        if torch.compiler.is_compiling():
            # The cache saves eager Python work; in a traced step it would only add a guard on the
            # cache's contents and so one more recompile while the state is being created.
            return [[state[p].get(k) if p in state else None for p in group["params"]] for k in keys]
        key = (id(state), len(state))
        cached = self._state_cache.get(gi)
        if cached is not None and cached[0] == key:
            return cached[1]
        states = [[state[p].get(k) if p in state else None for p in group["params"]] for k in keys]
        self._state_cache[gi] = (key, states)
        return states

    def _collect_all(self) -> list:
        """(params with grads, their grads, their state lists, sparse) of every group. Every grad is
        read before the state dict is looked at: inside torch.compile a parameter first reached
        as a key of ``self.state`` would have its grad guarded by identity, and a new grad object
        each step (``zero_grad(set_to_none=True)``) would then invalidate the compiled step."""
        groups = self._groups
        all_grads = [[p.grad for p in g["params"]] for g in groups]
        return [self._collect(g, gi, grads) for gi, (g, grads) in enumerate(zip(groups, all_grads))]

    def _collect_cached(self) -> list:
        """``_collect_all`` for an eager step, reused from the last step when nothing it read
        changed (see ``_Collected``): per parameter one grad read, one id and one address, no
        per-tensor checks. Only answers without sparse gradients are kept."""
        groups = self._groups
        memo = self.__dict__.get("_collected")
        state_key = (id(self.state), len(self.state), *(self._state_cache.get(gi) for gi in range(len(groups))))
        keeps = tuple(map(self._keeps_state, groups))
        if memo is not None and memo.alive and memo.keeps == keeps and len(memo.groups) == len(groups) and all(
            g["params"] is ps and len(ps) == n for g, (ps, n) in zip(groups, memo.groups)
        ) and len(memo.state_key) == len(state_key) and all(map(operator.is_, memo.state_key[2:], state_key[2:])) \
                and memo.state_key[:2] == state_key[:2]:
            params = memo.params
            grads = list(map(_GRAD, params))
            if list(map(id, grads)) == memo.grad_ids and memo.alive \
                    and tuple(map(torch.Tensor.data_ptr, params)) == memo.param_key:
                memo.hits += 1
                out, i = [], 0
                for ps, states in memo.work:  # (the grads are not kept: zero_grad() must free them)
                    out.append((ps, grads[i : i + len(ps)], states, None))
                    i += len(ps)
                return out
        self._collected = None
        collected = self._collect_all()
        backoff = self.__dict__.get("_collect_backoff", 0)
        if memo is not None and not memo.hits and not memo.alive:
            # The last one served no step and a grad it saw was freed (zero_grad() at every step
            # frees them): keeping one costs more than it saves; tried again after a while.
            backoff = 16
        if backoff:
            self._collect_backoff = backoff - 1
        elif all(c[3] is None for c in collected) and not any(self._sharded):
            params = [p for g in groups for p in g["params"]]
            grads = list(map(_GRAD, params))
            if all(g is not None for g in grads):
                # (The state cache as _collect_all left it: the key is read again.)
                state_key = (id(self.state), len(self.state),
                             *(self._state_cache.get(gi) for gi in range(len(groups))))
                self._collected = _Collected(tuple((g["params"], len(g["params"])) for g in groups), params, grads,
                                             state_key, keeps, [(c[0], c[2]) for c in collected])
        return collected

    def _collect(self, group: dict[str, Any], gi: int, grads: list):
        """The group's parameters with a gradient, their grads and state lists (each empty when the
        group keeps no state), as (params, grads, states, sparse): ``sparse`` is None, or the same
        three for the parameters whose gradient (or a state tensor) is sparse, which the dense
        lists leave out."""
        ps = group["params"]
        keeps = self._keeps_state(group)
        all_states = self._group_states(group, gi) if keeps else None
        n_keys = len(self._state_keys)
        if all(g is not None for g in grads):
            params = ps
            states = [list(s) for s in all_states] if keeps else [[] for _ in range(n_keys)]
        else:
            keep = [i for i, g in enumerate(grads) if g is not None]
            params = [ps[i] for i in keep]
            grads = [grads[i] for i in keep]
            states = [[s[i] for i in keep] for s in all_states] if keeps else [[] for _ in range(n_keys)]
        any_sparse = False
        for p, g in zip(params, grads):
            if not p.is_contiguous() and overlaps_itself(local(p)):
                # torch's in-place update raises this mid-step; checked here, before any update.
                raise RuntimeError(
                    f"unsupported operation: more than one element of the written-to tensor refers to a single "
                    f"memory location: a parameter of param group {gi} (shape {tuple(p.shape)}, strides "
                    f"{tuple(local(p).stride())}) shares memory between its elements; give it its own storage (clone it)"
                )
            # torch checks device, dtype and shape when a grad is assigned; the dtype can differ
            # only through the grad_dtype opt-in.
            if g.is_sparse or g.dtype is not p.dtype:
                if g.is_sparse and g.dtype is p.dtype:
                    any_sparse = True
                    continue
                raise RuntimeError(
                    f"gradient does not match its parameter in param group {gi}: grad "
                    f"{tuple(g.shape)} {g.dtype} {g.layout} on {g.device}, param {tuple(p.shape)} {p.dtype} on {p.device}"
                )
        check_states = self._sparse_state and any(states)
        if not (any_sparse or check_states):
            return params, grads, states, None
        sparse_at = {i for i, g in enumerate(grads) if g.is_sparse}
        if check_states:
            # A sparse state tensor (made by sparse gradients) meets a dense gradient: that
            # parameter goes with the sparse ones (_check_sparse raises torch's error for it).
            sparse_at |= {i for s in states for i, b in enumerate(s) if b is not None and b.is_sparse}
        if not sparse_at:
            return params, grads, states, None
        sparse_at = sorted(sparse_at)
        rest = sorted(set(range(len(params))) - set(sparse_at))
        sparse = (_pick(params, sparse_at), _pick(grads, sparse_at), [_pick(s, sparse_at) for s in states])
        return _pick(params, rest), _pick(grads, rest), [_pick(s, rest) for s in states], sparse

    def _store_states(self, gi: int, owners: list[Tensor], new: list[list], old: list[list], sharded=False) -> None:
        """Put the state tensors an update made (``new`` where it is not ``old``) in ``self.state``."""
        n_lists = len(self._kernel.state_lists)
        for k, (key, news, olds) in enumerate(zip(self._state_keys, new, old)):
            if news is olds:
                continue  # the update kept the very list it was given: no new tensor
            for p, b, was in zip(owners, news, olds):
                if b is not was:
                    # (A scalar state stays a plain tensor, as torch keeps Adam's step of a DTensor.)
                    self.state[p][key] = like_param(b, p) if sharded and k < n_lists else b
                    self._sparse_state = self._sparse_state or b.is_sparse
                    self._state_cache.pop(gi, None)

    # ------------------------------------------------------------------ sparse and differentiable

    def _check_sparse(self, sparse) -> None:
        """Refuse, before any update, what torch's for-loop cannot do with sparse gradients (it
        fails part-way through its step; the error types are torch's)."""
        if self.max_grad_norm is not None:
            raise RuntimeError(
                "fused clipping (max_grad_norm) does not support sparse gradients (torch.nn.utils."
                "clip_grad_norm_ cannot compute their norm either)"
            )
        for gi, (params, grads, states) in sparse:
            self._check_sparse_group(self.param_groups[gi], gi, params, grads, states)

    def _step_sparse(self, sparse, grad_scale: Tensor | None, found_inf: Tensor | None) -> None:
        """Parameters with sparse gradients (``nn.Embedding(sparse=True)``): torch's for-loop
        algorithm op for op (torch's fused and foreach kernels take no sparse tensors; a first state
        tensor is sparse, as in torch). The LR is the group's device truth, ``_lr_buf[gi]``: read on
        the host on CPU (free there), kept on the device elsewhere (no sync). AMP: the gradient is
        divided by ``grad_scale``; a nonzero ``found_inf`` is read on the host (one sync on an
        accelerator, only on steps with sparse gradients) and skips the update."""
        if found_inf is not None and float(found_inf) != 0:
            return
        for gi, (params, grads, states) in sparse:
            group = self.param_groups[gi]
            keeps = self._keeps_state(group)
            if grad_scale is not None:
                grads = [g / grad_scale for g in grads]
            if keeps:
                # State the Triton path allocated on a step AMP skipped holds no history yet.
                states = [list(s) for s in states]
                for j, p in enumerate(params):
                    if states[0][j] is not None and self._engine.take_first_step(p):
                        for s in states:
                            s[j] = None
            lr = self._lr_views[gi]
            new = self._update_sparse(
                group, params, grads, states if keeps else [[None] * len(params) for _ in states],
                lr=lr.item() if lr.device.type == "cpu" else lr,
            )
            self._store_states(gi, params, new, states)

    def _step_differentiable(self) -> None:
        """differentiable=True: torch's step with differentiable=True, i.e. its for-loop algorithm
        recorded by autograd, on either backend. The LR is the tensor given that requires grad
        (what the step differentiates through), else the group's LR read from the device truth
        (``_lr_buf``; a host read)."""
        if self._impl == "triton" and self._schedule is not None and self._schedule.pending:
            self._schedule.end_update(False, self._lr_buf)  # no kernel will apply the deferred step
        keys = self._state_keys
        work = []
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.is_leaf and p.requires_grad:
                    # torch raises this part-way through its step; fused_lr before any update.
                    raise RuntimeError(
                        "a leaf Variable that requires grad is being used in an in-place operation. "
                        f"(differentiable=True updates the parameters in place with autograd recording; param group {gi} "
                        f"holds a leaf tensor of shape {tuple(p.shape)} that requires grad: optimize non-leaf tensors, "
                        f"e.g. p.clone(), as torch.optim.{self._stock_name}(differentiable=True) requires)"
                    )
            grads = [p.grad for p in params]
            states = [[self.state[p].get(k) if p in self.state else None for p in params] for k in keys]
            if not self._keeps_state(group):
                states = [[] for _ in keys]
            if any(g.is_sparse for g in grads):
                self._check_sparse([(gi, (params, grads, states))])
            work.append((gi, group, params, grads, states))
        for gi, group, params, grads, states in work:
            kept = self._grad_lrs.get(id(group))
            self._update_differentiable(group, params, grads, states,
                                        lr=kept[1] if kept is not None else self._lr_views[gi].item())
            for key, s in zip(keys, states):
                for p, b in zip(params, s):
                    if b is not None:  # (a state list the group does not keep: Adam's max_exp_avg_sq)
                        self.state[p][key] = b
            self._state_cache.pop(gi, None)

    # ------------------------------------------------------------------ the torch path

    def _check_finite_norm(self, norm: Tensor, found_inf: Tensor | None) -> None:
        """error_if_nonfinite: a host read of the norm (and of found_inf), before any update."""
        if not self.error_if_nonfinite:
            return
        if found_inf is not None and float(found_inf) != 0:
            return  # AMP skips this step: the non-finite norm is expected
        value = float(norm)
        if not math.isfinite(value):
            raise RuntimeError(
                f"The total norm of order {self.norm_type} for gradients from `parameters` is non-finite "
                f"({value}), so it cannot be clipped. To disable this error and scale the gradients by the "
                "non-finite norm anyway, set `error_if_nonfinite=False`"
            )

    def _norm_check(self, found_inf: Tensor | None):
        """The Triton path's ``error_if_nonfinite`` check of the norm its kernels computed, or None."""
        if not self.error_if_nonfinite:
            return None
        return lambda norm: self._check_finite_norm(norm, found_inf)

    def _skip_on_host(self, work, found_inf: Tensor | None) -> tuple[bool, Tensor | None]:
        """Whether the torch path skips this step (decided on the host), and the found_inf to hand
        to torch's fused kernel (device-side skip).

        On CPU found_inf is read on the host (no sync exists there). On CUDA it stays on the device
        unless this step creates a state tensor: a device-skipped first step would leave it
        unwritten (torch's own fused kernels store it anyway, see the tests), so such a step,
        typically only the first, reads found_inf on the host (one sync).
        """
        if found_inf is None:
            return False, None
        new_state = any(
            b is None for group, (_, _, ss) in zip(self._groups, work) if self._keeps_state(group) for s in ss for b in s
        )
        if _device.host_reads_free(self._device) or new_state:
            return float(found_inf) != 0, None
        return False, (found_inf != 0).to(torch.float32)

    def _float32_lrs(self) -> list[Tensor]:
        """The groups' LRs as 0-dim views of one persistent float32 buffer (torch's fused kernel
        reads its tensor LR as float32 on an accelerator), refreshed from the float64 LR buffer by
        one copy per step (capturable)."""
        buf = self._lrs.buf
        cached = self.__dict__.get("_lr32")
        if cached is None or cached[0] is not buf:
            b32 = torch.empty(buf.shape, dtype=torch.float32, device=buf.device)
            cached = self._lr32 = (buf, b32, list(b32.unbind()))
        cached[1].copy_(buf)
        return cached[2]

    def _step_torch(self, work, grad_scale=None, found_inf=None, clip_coef=None, norm_done=False) -> None:
        """The pure-PyTorch path. ``clip_coef``/``norm_done``: the Triton path already computed the
        coefficient over every gradient (its kernel tensors and these)."""
        if self.max_grad_norm is not None and not norm_done:
            all_grads = [g for (_, gs, _) in work for g in gs]
            total = grad_norm_torch(all_grads, self.norm_type == math.inf).to(self._device)
            dtensor = dtensor_type()
            if dtensor is not None and isinstance(total, dtensor):
                # FSDP2: the shards' norms are partial; full_tensor() reduces them across the ranks
                # (a collective on the device, no host sync), as clip_grad_norm_ does for DTensors.
                total = total.full_tensor()
            if grad_scale is not None:
                total = total / grad_scale
            self._check_finite_norm(total, found_inf)
            self.last_grad_norm = total
            clip_coef = (self.max_grad_norm / (total + 1e-6)).clamp(max=1.0)
        skip, device_found_inf = self._skip_on_host(work, found_inf)
        if skip:
            return
        lrs = self._lr_views if _device.host_reads_free(self._device) else self._float32_lrs()
        for gi, (group, (params, grads, states)) in enumerate(zip(self._groups, work)):
            if not params:
                continue
            owners, sharded = params, self._sharded[gi]
            if sharded:
                # DTensors (FSDP2): torch has no sharding rule for the fused kernels, and none is
                # needed: the update is elementwise, so each rank updates its own shards in place.
                params, grads = [local(t) for t in params], [local(t) for t in grads]
                states = [[local(t) for t in s] for s in states]
            if grad_scale is not None or clip_coef is not None:
                grads = scaled_grads(grads, grad_scale, clip_coef)
            new = self._update(group, params, grads, states, lr=lrs[gi], uniform=self._uniform[gi],
                               found_inf=device_found_inf)
            self._store_states(gi, owners, new, states, sharded)

    # ------------------------------------------------------------------ the Triton path

    def _hyper_rows(self) -> tuple:
        """Each group's row for the kernel (a momentum cycled by the schedule: its schedule row)."""
        sched = self._schedule
        cycled = sched.momentum_rows if sched is not None else {}
        return tuple(self._hyper_row(g, cycled.get(gi, -1)) for gi, g in enumerate(self._groups))

    def _step_triton(self, work, grad_scale=None, found_inf=None) -> None:
        """Every group in one engine update per dtype; the LR is computed in the kernel from the schedule."""
        eng, spec = self._engine, self._kernel
        keys = self._state_keys
        n_lists = len(spec.state_lists)  # (then the scalar states: not shaped like the parameter)
        sched = self._schedule
        hyper = self._hyper_rows()
        clipping = self.max_grad_norm is not None
        norm_inf = self.norm_type == math.inf
        params, grads, slots, gidx = [], [], [], []
        states = [[] for _ in keys]
        new_state = []  # (param, key, tensor, group, sharded): stored only once the launch is under way
        new_slots = []
        leftovers = []  # tensors the kernel does not take (layouts it cannot walk flat, exotic dtypes): torch path
        for gi, (_group, (ps, gs, ss)) in enumerate(zip(self._groups, work)):
            keeps = spec.keeps_state(hyper[gi])  # (a cycled momentum lives in the schedule: always kept)
            kept = [spec.kept(hyper[gi], k) for k in range(len(keys))]
            zeros = found_inf is not None or spec.zero_state(hyper[gi])
            rest = ([], [], [[] for _ in keys])
            sharded = self._sharded[gi]
            for j, (owner, g) in enumerate(zip(ps, gs)):
                bs = [s[j] if (keeps and s) else None for s in ss]
                p = owner
                if sharded:  # DTensors: the kernel updates this rank's shards (see _step_torch)
                    p, g, bs = local(p), local(g), [local(b) for b in bs]
                if not _flat(p, g, bs[:n_lists]) or not (
                    p.dtype in engine.KERNEL_DTYPES or (p.is_complex() and p.real.dtype in engine.KERNEL_DTYPES)
                ) or (clipping and norm_inf and p.is_complex()):
                    # The kernel walks parameter, gradient and state as flat arrays: a non-dense
                    # parameter, or a gradient or state tensor with other strides (a gradient
                    # assigned by hand; autograd gives a dense parameter's gradient its strides),
                    # takes the torch path, which follows strides. (The inf-norm of a complex
                    # gradient is max |z|, not the real view's max component: the torch path
                    # computes it.)
                    rest[0].append(owner), rest[1].append(gs[j])
                    for k, s in enumerate(ss):
                        rest[2][k].append(s[j] if (keeps and s) else None)
                    continue
                if keeps and any(b is None and kb for b, kb in zip(bs, kept)):
                    # Zeros, not empty, if AMP may skip this first step (the state stays as allocated
                    # until the next real step, which is the first step: the flag stays set) or the
                    # spec asks for it; in the parameter's layout (dense here), so that the kernel
                    # walks them all flat.
                    for k, b in enumerate(bs):
                        if b is None and kept[k]:
                            bs[k] = self._new_state(k, p, zeros)
                            new_state.append((owner, keys[k], bs[k], gi, sharded and k < n_lists))
                    new_slots.append(eng.slot_of[id(owner)])
                real = torch.view_as_real if p.is_complex() else (lambda t: t)
                params.append(real(p))
                grads.append(real(g))
                for k, b in enumerate(bs):
                    states[k].append(None if b is None else real(b) if k < n_lists else b)
                slots.append(eng.slot_of[id(owner)])
                gidx.append(gi)
            leftovers.append(rest)
        has_leftovers = any(r[0] for r in leftovers)
        if not params:
            # Nothing for the kernel: the torch path does the whole step (and the clipping).
            if sched is not None and sched.pending:
                sched.end_update(False, self._lr_buf)  # no kernel applies the deferred steps
            self._step_torch(leftovers, grad_scale, found_inf)
            return
        capturing = _device.capturing(self._device)
        if capturing and new_state:
            raise RuntimeError(CAPTURE_NEW_STATE)
        lr = eng.device_lr(sched, self._lr_buf, len(self._groups), capturing)
        clip = None
        if clipping:
            left_grads = [g for r in leftovers for g in r[1]]
            extra = None
            if left_grads:
                # The leftovers' share of the norm, as one more partial: sum of squares or max.
                part = grad_norm_torch(left_grads, norm_inf).to(device=self._device, dtype=torch.float64)
                extra = (part if norm_inf else part * part).reshape(1)
            clip = eng.clip_spec(self._device, self.max_grad_norm, norm_inf, norm_dtype(grads + left_grads),
                                 extra=extra, check=self._norm_check(found_inf))
        wrote = eng.update(params, grads, states, slots, gidx, hyper, lr, new_slots=new_slots, grad_scale=grad_scale,
                           found_inf=found_inf, clip=clip)
        for owner, key, b, gi, sharded in new_state:
            self.state[owner][key] = like_param(b, owner) if sharded else b
            self._state_cache.pop(gi, None)
        if clip is not None:
            self.last_grad_norm = clip.norm_out.clone().reshape(())
        eng.finish_schedule(sched, self._lr_buf, lr, wrote, capturing)
        if has_leftovers:
            # After the kernel: it wrote back the LR the step used, which the torch path reads.
            coef_t = None if clip is None else clip.clip_coef.reshape(()).to(clip.norm_out.dtype)
            self._step_torch(leftovers, grad_scale, found_inf, clip_coef=coef_t, norm_done=clip is not None)
        # Every parameter took the kernel, as real tensors: the next steps can skip the collection.
        eng.steady = None
        all_in = len(params) == sum(len(g["params"]) for g in self._groups)
        if all_in and not has_leftovers and not any(self._sharded) and not any(p.is_complex() for p in params):
            eng.remember(self._groups, params, states, slots, gidx, hyper, sched, norm_dtype(params))

    def warmup(self, *, amp: bool = False) -> list[tuple]:
        """Compile now the Triton kernel variants this optimizer's steps can select, instead of at
        the step that first needs one (each compile takes seconds on a GPU): its dtypes' update
        kernels for aligned and misaligned tensors, with the AMP variant (``amp=True``: steps given
        a GradScaler's ``grad_scale``/``found_inf``) and the clipping kernels (``max_grad_norm``).

        The variants depend on the parameters and state the first step sets up: called before the
        first step, the compiles are made right after it. Returns the variants compiled now, as
        ``(kernel, dtype, ALIGNED, SCALED)`` (empty on the torch path, and when deferred); under
        Triton's interpreter nothing is compiled, the variants are listed all the same."""
        if not isinstance(amp, bool):
            raise TypeError(f"amp must be a bool, got {amp!r}")
        if self._impl != "triton":
            return []
        eng = self._engine
        plan = eng.steady.plan if eng.steady is not None else eng.latest_plan()
        if plan is None:
            self._warm_request = amp  # made right after the first step
            return []
        self._warm_request = None
        clip = None
        if self.max_grad_norm is not None:
            dtype = eng.steady.norm_dtype if eng.steady is not None else torch.float32
            clip = eng.clip_spec(self._device, self.max_grad_norm, self.norm_type == math.inf, dtype)
        lr = eng.device_lr(self._schedule, self._lr_buf, len(self._groups))
        return engine.warm_up(self._kernel, plan, lr, eng.ticket, eng.first_flags, n_groups=len(self._groups),
                              scaled=(False, True) if amp else (False,), clip=clip)

    def _step_steady(self, grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> bool:
        """The Triton path's steady state (``EngineState.steady_update``); returns False, having
        changed nothing, when the full step must run."""
        eng = self._engine
        clip = None
        if self.max_grad_norm is not None:
            clip = eng.clip_spec(self._device, self.max_grad_norm, self.norm_type == math.inf, eng.steady.norm_dtype,
                                 check=self._norm_check(found_inf), create=False)
            if clip is None:
                return False
        if not eng.steady_update(self._groups, self._hyper_rows(), self._schedule, self._lr_buf, grad_scale=grad_scale,
                                 found_inf=found_inf, clip=clip):
            return False
        if clip is not None:
            self.last_grad_norm = clip.norm_out.clone().reshape(())
        return True

    def _step_triton_compiled(self, work, grad_scale, found_inf) -> bool:
        """Inside torch.compile: the update as the engine's custom op
        (``torch.ops.fused_lr.multi_tensor_update``), which the compiler keeps as one opaque,
        ordered call. Covers plain steps (no AMP, no clipping, no DTensors; real tensors of the
        kernel's dtypes, each parameter dense with its gradient and state in its layout); returns
        False for anything else, and the traced torch-op update runs instead."""
        if grad_scale is not None or found_inf is not None or self.max_grad_norm is not None or any(self._sharded):
            return False
        for group in self._groups:
            for p in group["params"]:
                if p.is_complex() or p.dtype not in engine.KERNEL_DTYPES or not is_dense(p):
                    return False
        for ps, gs, ss in work:
            for j, (p, g) in enumerate(zip(ps, gs)):
                if not _flat(p, g, [s[j] for s in ss[: len(self._kernel.state_lists)] if s]):
                    return False
        eng, spec = self._engine, self._kernel
        sched = self._schedule
        hyper = self._hyper_rows()
        if sched is not None and sched.pending:
            # A scheduler step deferred by an eager step before: no kernel in here applies it.
            sched.end_update(False, self._lr_buf)
        eng.ensure(self._device)
        params, grads, slots, gidx = [], [], [], []
        keys = self._state_keys
        states = [[] for _ in keys]
        for gi, (ps, gs, ss) in enumerate(work):
            keeps = spec.keeps_state(hyper[gi])
            kept = [spec.kept(hyper[gi], k) for k in range(len(keys))]
            for j, (p, g) in enumerate(zip(ps, gs)):
                bs = [s[j] if (keeps and s) else None for s in ss]
                slot = eng.slot_of[id(p)]
                if keeps and any(b is None and kb for b, kb in zip(bs, kept)):
                    for k, b in enumerate(bs):
                        if b is None and kept[k]:
                            bs[k] = self._new_state(k, p, True)  # the parameter's layout (a scalar: 0-dim)
                            self.state[p][keys[k]] = bs[k]
                    self._state_cache.pop(gi, None)
                    eng.first_flags[slot] = 1  # a first step (the kernel clears it)
                params.append(p)
                grads.append(g)
                for k, b in enumerate(bs):
                    states[k].append(b)
                slots.append(slot)
                gidx.append(gi)
        if not params:
            return True
        lr = eng.device_lr(sched, self._lr_buf, len(self._groups))
        # No None in a mutated list argument: torch 2.13's auto_functionalize fails on one (a list
        # arg holding None: "'dict' object has no attribute 'append'"). A state a group does not
        # keep is passed as an empty placeholder, which the op turns back into None (spec.kept).
        absent = torch.empty(0, device=self._device)
        flat_states = [absent if b is None else b for s in states for b in s]
        torch.ops.fused_lr.multi_tensor_update(
            spec.name, params, grads, flat_states, eng.first_flags, eng.ticket, lr.desc, lr.table,
            lr.step, [x for h in hyper for x in h], gidx, slots, True,
        )
        eng.steady = None  # eager steps afterwards rebuild their plan (state may be new)
        return True

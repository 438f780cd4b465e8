"""Parameter and gradient layouts, shared by tests/test_layouts.py (torch path) and the "layouts" case
of tests/_triton_optimizer_subprocess.py (Triton path, under the interpreter).

Every parameter is a view into its own larger storage filled with a sentinel pattern, and gradients
that are views live in sentinel-filled storages too: after each step, every element outside a
tensor's own elements must be bit-identical to before (a kernel that walks a strided view as a flat
array writes its neighbours), and the gradients themselves must be unchanged (the update never
writes them). The same layouts, values and steps run through stock torch.optim.SGD(foreach=False)
beside FusedSGD, and parameters and momentum buffers are compared at every step.
"""

from __future__ import annotations

import torch

PAD = 3  # sentinel elements before and after the contiguous views

# name -> (shape of the storage, the parameter as a view of it)
PARAM_LAYOUTS = {
    # contiguous, but inside a larger storage (a flat parameter buffer): the control
    "contiguous": ((12 + 2 * PAD,), lambda s: s[PAD : PAD + 12].view(3, 4)),
    "column": ((5, 4), lambda s: s[:, 1]),  # non-dense: stride 4
    "block": ((6, 7), lambda s: s[1:-1, 2:5]),  # non-dense: rows of 3 with gaps of 4
    "as_strided": ((40,), lambda s: s.as_strided((3, 4), (9, 2), 2)),  # non-dense, gaps in both dims
    "transposed": ((12 + 2 * PAD,), lambda s: s[PAD : PAD + 12].view(3, 4).t()),  # dense, permuted
    "channels_last": ((24 + 2 * PAD,), lambda s: s[PAD : PAD + 24].view(2, 2, 2, 3).permute(0, 3, 1, 2)),
    # dense; the size-1 dim's stride (5) is arbitrary, as torch allows: it never moves the address
    "size1_stride": ((12 + 2 * PAD,), lambda s: s.as_strided((3, 1, 4), (4, 5, 1), PAD)),
    "scalar": ((7,), lambda s: s[3]),  # 0-dim, at an offset
}
# Layouts an elementwise kernel can walk as a flat array (non-overlapping and dense).
DENSE = ("contiguous", "transposed", "channels_last", "size1_stride", "scalar")

# How a step's gradient values are laid out (see make_grad).
GRAD_LAYOUTS = ("like_param", "contiguous", "permuted", "expanded", "view")

# Hyper-parameter sets: plain SGD, nesterov with weight decay, dampened momentum with maximize.
CONFIGS = {
    "plain": dict(momentum=0.0),
    "nesterov": dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
    "damped_max": dict(momentum=0.9, dampening=0.1, weight_decay=1e-2, maximize=True),
}
STEPS = 6
NONE_GRAD = ("column", 2)  # this parameter has no gradient on this step
FROZEN = ("block", 2)  # this parameter has no gradient before this step (its first momentum step comes late)

_BITS = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of ``t`` (so -0.0 != 0.0 and NaN == NaN of the same payload)."""
    return t.view(_BITS[t.element_size()])


def sentinel(shape, dtype) -> torch.Tensor:
    """A storage filled with values of order 1, exact in bfloat16, that any SGD write would change."""
    n = 1
    for s in shape:
        n *= s
    return (1.0 + (torch.arange(n) % 8) / 8.0 + 0.125).to(dtype).reshape(shape)


def _own_elements(shape, view) -> torch.Tensor:
    mask = torch.zeros(shape, dtype=torch.bool)
    view(mask).fill_(True)
    return mask


def make_grad(layout: str, p: torch.Tensor, values: torch.Tensor):
    """``values`` (contiguous, ``p``'s shape) laid out as ``layout``: (grad, storage, own-element mask);
    storage and mask are None unless the grad is a view into a larger sentinel storage."""
    if layout == "like_param":
        # What autograd gives: the parameter's strides when it is dense, else contiguous.
        return torch.empty_like(p).copy_(values), None, None
    if layout == "contiguous":
        return values.clone(), None, None
    if layout == "permuted":
        rev = tuple(reversed(range(values.dim())))
        return values.permute(rev).contiguous().permute(rev), None, None
    if layout == "expanded":
        # One value for every element (stride 0), as torch.ones(1).expand(n)-style grads are.
        return values.reshape(-1)[0].clone().expand(values.shape), None, None
    if layout == "view":
        shape = (*values.shape, 3)
        view = lambda s: s[..., 1]  # noqa: E731
        storage = sentinel(shape, values.dtype).to(values.device)
        g = view(storage)
        g.copy_(values)
        return g, storage, _own_elements(shape, view).to(values.device)
    raise ValueError(layout)


class World:
    """One parameter per layout of ``names``, each a view into its own sentinel-filled storage;
    two Worlds built with the same arguments hold the same values in the same layouts."""

    def __init__(self, dtype, names=tuple(PARAM_LAYOUTS), seed=0, device="cpu"):
        gen = torch.Generator().manual_seed(seed)
        self.names = list(names)
        self.dtype = dtype
        self.device = torch.device(device)
        self.storages, self.masks, self.params = [], [], []
        for name in self.names:
            shape, view = PARAM_LAYOUTS[name]
            storage = sentinel(shape, dtype).to(self.device)
            p = view(storage)
            p.copy_(torch.randn(p.shape, generator=gen).to(dtype))
            self.storages.append(storage)
            self.masks.append(_own_elements(shape, view).to(self.device))
            self.params.append(torch.nn.Parameter(p))  # shares the storage: same strides and offset
        self.outside = [bits(s[~m]).clone() for s, m in zip(self.storages, self.masks)]
        self.grads = []  # (grad, copy of its bits, storage, mask, bits outside) of the current step

    def set_grads(self, values, layouts) -> None:
        self.grads = []
        for p, v, layout in zip(self.params, values, layouts):
            if v is None:
                p.grad = None
                continue
            g, storage, mask = make_grad(layout, p, v)
            p.grad = g
            self.grads.append((g, bits(g).clone(), storage, mask, None if storage is None else bits(storage[~mask]).clone()))

    def check_untouched(self, what: str) -> None:
        for name, s, m, before in zip(self.names, self.storages, self.masks, self.outside):
            after = bits(s[~m])
            if not torch.equal(after, before):
                changed = int((after != before).sum())
                raise AssertionError(
                    f"{what}: {changed} element(s) of the storage around parameter {name!r} changed "
                    f"(values now {s[~m][after != before].tolist()[:6]})"
                )
        for k, (g, g_bits, storage, mask, outside) in enumerate(self.grads):
            if not torch.equal(bits(g), g_bits):
                raise AssertionError(f"{what}: gradient {k} ({tuple(g.stride())}) was written")
            if storage is not None and not torch.equal(bits(storage[~mask]), outside):
                raise AssertionError(f"{what}: the storage around gradient {k} changed")


def grad_values(t: int, world: World):
    gen = torch.Generator().manual_seed(100 + t)
    out = [torch.randn(p.shape, generator=gen).to(world.device, world.dtype) for p in world.params]
    for name, step in (NONE_GRAD,):
        if name in world.names and t == step:
            out[world.names.index(name)] = None
    name, until = FROZEN
    if name in world.names and t < until:
        out[world.names.index(name)] = None
    return out


def grad_layouts(grad_layout: str, t: int, n: int) -> list[str]:
    """Each parameter's gradient layout at step ``t``: ``grad_layout`` for all, or with "rotate",
    parameter i gets GRAD_LAYOUTS[(i + t) % 5], so a parameter's gradient changes layout every step
    and, over the steps, every parameter layout meets every gradient layout."""
    if grad_layout == "rotate":
        return [GRAD_LAYOUTS[(i + t) % len(GRAD_LAYOUTS)] for i in range(n)]
    return [grad_layout] * n


def groups(world: World):
    half = len(world.params) // 2
    return [dict(params=world.params[:half]), dict(params=world.params[half:], lr=0.05)]


def run(make_fused, dtype, grad_layout, config, close, names=tuple(PARAM_LAYOUTS), steps=STEPS, device="cpu",
        stock=torch.optim.SGD, keys=("momentum_buffer",)):
    """Stock ``stock(foreach=False)`` (torch.optim.SGD; AdamW / Adam for tests/test_adamw_parity.py)
    and ``make_fused(param_groups, **config)`` side by side over the same layouts; ``close(actual,
    expected, what)`` compares values, of the parameters and of each state tensor of ``keys``.
    Returns (stock world, stock optimizer, fused world, fused optimizer)."""
    a, b = World(dtype, names, device=device), World(dtype, names, device=device)
    oa = stock(groups(a), lr=0.1, foreach=False, **config)
    ob = make_fused(groups(b), lr=0.1, **config)
    for t in range(steps):
        layouts = grad_layouts(grad_layout, t, len(a.params))
        for w in (a, b):
            w.set_grads(grad_values(t, w), layouts)
        oa.step()
        ob.step()
        what = f"{dtype} {config} grads {grad_layout} step {t}"
        a.check_untouched(f"stock, {what}")  # the harness itself: stock writes only its parameters
        b.check_untouched(f"FusedSGD, {what}")
        for name, p, q in zip(a.names, a.params, b.params):
            close(q, p, f"{what}: param {name}")
            for key in keys:
                ba = oa.state.get(p, {}).get(key)
                bb = ob.state.get(q, {}).get(key)
                assert (ba is None) == (bb is None), f"{what}: {key} presence of {name}"
                if ba is not None:
                    close(bb, ba, f"{what}: {key} of {name}")
    return a, oa, b, ob

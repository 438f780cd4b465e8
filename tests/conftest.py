"""Shared test helpers: tolerances per dtype (justified once, here) and informative comparisons."""

from __future__ import annotations

import torch

# Parameter-trajectory tolerances against stock torch.optim.SGD's for-loop implementation, which
# rounds after every elementary operation. fused_lr's CPU path runs torch's own fused SGD kernel,
# which contracts `p - lr*g` and `momentum*buf + (1-dampening)*g` into fused multiply-adds: each
# step may differ from the for-loop by ~1-2 ulp of the values involved, and the differences add up
# over the steps of a trajectory (25-30 here) without growing faster (SGD is a contraction for these
# small learning rates). fp32: 2 ulp * 30 steps ~ 7e-6 relative -> rtol 1e-5, with atol 1e-6 for
# elements that pass through zero. fp64: the same argument with eps = 2.2e-16 gives ~1e-14 -> 1e-12.
# The learning rates themselves agree to ~1e-15 (see LR_RTOL), far below either bound.
TRAJ_TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-6),
    torch.float64: dict(rtol=1e-12, atol=1e-13),
    torch.complex64: dict(rtol=1e-5, atol=1e-6),
    # float16 / bfloat16 on CPU: FusedSGD runs torch's for-loop algorithm op for op in the same
    # dtype as the for-loop reference (torch's CPU fused kernel is wrong for these dtypes), so the
    # bits must be identical.
    torch.float16: dict(rtol=0.0, atol=0.0),
    torch.bfloat16: dict(rtol=0.0, atol=0.0),
}

# LR sequences: stock computes in Python float64 through chained recurrences (StepLR and
# ExponentialLR multiply by gamma each time, CosineAnnealingLR uses a ratio of cosines); fused_lr
# uses the closed forms in float64. Both are float64 evaluations of the same real number, so they
# differ by rounding only: ~n ulp after n chained products, and for the cosine recurrence by
# eps / (1 + cos(pi (t-1)/T_max)), which for T_max <= 1000 stays below 1e-10. 1e-9 is therefore
# safe and still far below any real schedule error (an off-by-one step changes the LR by > 1e-3
# relative), and tighter than the bound of 1e-6. atol covers LRs that are exactly 0 on one
# side (cosine with eta_min=0 at T_max, LinearLR with end_factor=0) where the other holds a rounding
# residue of a few ulp of the LRs its recurrence multiplied: 1e-15 for base LRs up to 1, scaled by
# the base LR above that (assert_lrs_close's ``scale``; hypothesis found 1.1e-15 with base_lr=10).
LR_RTOL = 1e-9
LR_ATOL = 1e-15


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float, what: str) -> None:
    """torch.testing.assert_close with a message naming what differs, where and by how much."""
    actual = actual.detach()
    expected = expected.detach()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if actual.is_complex():
        actual, expected = torch.view_as_real(actual), torch.view_as_real(expected)
    a64, e64 = actual.double(), expected.double()
    diff = (a64 - e64).abs()
    bound = atol + rtol * e64.abs()
    bad = diff > bound
    if bool(bad.any()):
        idx = int(torch.argmax((diff - bound).reshape(-1)))
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{bad.numel()} elements differ beyond rtol={rtol}, atol={atol}; "
            f"worst at flat index {idx}: got {a64.reshape(-1)[idx].item()!r}, "
            f"expected {e64.reshape(-1)[idx].item()!r} (|diff| {diff.reshape(-1)[idx].item():.3e}); "
            f"max |diff| overall {diff.max().item():.3e}"
        )


def assert_lrs_close(actual: list[float], expected: list[float], what: str, scale: float = 1.0) -> None:
    """LRs equal to LR_RTOL, or to LR_ATOL * scale where one side is (near) zero: a chained
    recurrence that reaches 0 (LinearLR's end_factor=0) leaves a residue of a few ulp of the LRs
    it multiplied, so the absolute bound scales with the base LR (``scale``: the largest base LR
    of the run when above 1)."""
    assert len(actual) == len(expected), f"{what}: {len(actual)} groups vs {len(expected)}"
    atol = LR_ATOL * max(1.0, scale)
    for g, (a, e) in enumerate(zip(actual, expected)):
        a, e = float(a), float(e)
        assert abs(a - e) <= atol + LR_RTOL * abs(e), (
            f"{what}, group {g}: fused {a!r} vs stock {e!r} (rel {abs(a - e) / max(abs(e), 1e-300):.2e})"
        )


class ForbidReadsOf(torch.overrides.TorchFunctionMode):
    """Raise on any host read (``item``, ``tolist``, ``float()``...) of the given tensors' memory:
    the device state a step must never read back (a sync on an accelerator). Host-side copies
    (the CPU mirror of a schedule, pinned buffers of an asynchronous copy) may be read."""

    _READS = {"__bool__", "__float__", "__int__", "__index__", "__complex__", "item", "tolist", "numpy", "__array__"}

    def __init__(self, *tensors: torch.Tensor) -> None:
        super().__init__()
        self._storages = {t.untyped_storage().data_ptr() for t in tensors}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in self._READS and args and isinstance(args[0], torch.Tensor):
            if args[0].untyped_storage().data_ptr() in self._storages:
                raise AssertionError(f"host read of device state through Tensor.{func.__name__}")
        return func(*args, **(kwargs or {}))

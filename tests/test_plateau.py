"""ReduceLROnPlateau on the device against torch's, decision by decision."""

from __future__ import annotations

import math

import pytest
import torch
import torch.optim.lr_scheduler as stock
from conftest import ForbidReadsOf
from hypothesis import given, settings
from hypothesis import strategies as st

import fused_lr
import fused_lr.lr_scheduler as fused
from fused_lr.schedules import _ForbidHostReads  # noqa: F401

BASE = (0.1, 0.02)


def _pair():
    a = torch.optim.SGD([{"params": [torch.nn.Parameter(torch.ones(1))], "lr": lr} for lr in BASE])
    b = fused_lr.FusedSGD([{"params": [torch.nn.Parameter(torch.ones(1))], "lr": lr} for lr in BASE])
    return a, b


def _assert_same_state(sa, sb, where):
    # Decisions are made with the same float64 comparisons and products on both sides: the LRs and
    # the counters must be *equal*, not merely close.
    assert sb.get_last_lr() == [g["lr"] for g in sa.optimizer.param_groups], where
    assert (sb.num_bad_epochs, sb.cooldown_counter, sb.last_epoch) == (sa.num_bad_epochs, sa.cooldown_counter, sa.last_epoch), (
        where
    )
    assert (sb.best == sa.best) or (math.isnan(sb.best) and math.isnan(sa.best)), where


_metric = st.one_of(
    st.floats(0.0, 2.0),
    st.sampled_from([1.0, 0.9999, 1.0001, 0.5, float("nan"), float("inf"), -float("inf")]),
)
_config = st.fixed_dictionaries(
    {
        "mode": st.sampled_from(["min", "max"]),
        "factor": st.sampled_from([0.1, 0.5, 0.9, 0.0]),
        "patience": st.integers(0, 4),
        "threshold": st.sampled_from([0.0, 1e-4, 0.01, 0.1]),
        "threshold_mode": st.sampled_from(["rel", "abs"]),
        "cooldown": st.integers(0, 3),
        "min_lr": st.one_of(st.just(0.0), st.just([1e-3, 1e-4]), st.floats(0.0, 0.01)),
        "eps": st.sampled_from([1e-8, 0.0, 1e-3]),
    }
)


# 300 random configurations x up to 60 metrics each (plateaus, improvements inside and below the
# threshold, NaN and infinities): every decision compared; runs in a few seconds.
@settings(max_examples=300, deadline=None)
@given(config=_config, metrics=st.lists(_metric, min_size=1, max_size=60), as_tensor=st.booleans())
def test_random_metric_sequences_match_stock(config, metrics, as_tensor):
    a, b = _pair()
    sa = stock.ReduceLROnPlateau(a, **config)
    sb = fused.ReduceLROnPlateau(b, **config)
    for i, m in enumerate(metrics):
        if as_tensor:
            # Alternate float64 and float32 device metrics; stock sees float(tensor), as users pass it.
            t = torch.tensor(m, dtype=torch.float32 if i % 2 else torch.float64)
            sa.step(t)
            sb.step(t)
        else:
            sa.step(m)
            sb.step(m)
        _assert_same_state(sa, sb, f"{config} step {i} metric {m}")


def test_float32_metric_tensor_is_compared_as_float():
    a, b = _pair()
    sa = stock.ReduceLROnPlateau(a, patience=1)
    sb = fused.ReduceLROnPlateau(b, patience=1)
    for m in [1.0, 0.3, 0.3, 0.29999, 0.3, 0.3, 0.1]:
        t = torch.tensor(m, dtype=torch.float32)
        sa.step(t)
        sb.step(t)
        _assert_same_state(sa, sb, f"metric {m}")


def _device_state(s, *more):
    return ForbidReadsOf(s.optimizer.lr_tensor, s._best, s._num_bad, s._cooldown_counter, s._metric, *more)


def test_device_metric_never_reads_the_host(monkeypatch):
    """The accelerator path, on CPU tensors: a tensor metric is never read back, nor is the device
    state; the float LRs follow from an asynchronous copy (on CPU it has arrived at once)."""
    monkeypatch.setattr(fused_lr.lr_scheduler.plateau, "_host_can_read", lambda t: False)
    _, b = _pair()
    s = fused.ReduceLROnPlateau(b, patience=0, factor=0.5)
    metric = torch.tensor(1.0)
    with _device_state(s, metric):
        for _ in range(4):
            s.step(metric)  # no improvement after the first: reduces at every later step
    expected = [lr * 0.5**3 for lr in BASE]
    assert b.lr_tensor.tolist() == pytest.approx(expected, rel=1e-15)
    assert s.get_last_lr() == pytest.approx(expected, rel=1e-15)  # the arrived copy
    assert [g["lr"] for g in b.param_groups] == pytest.approx(expected, rel=1e-15)


def test_custom_combined_metric_runs_on_the_device(monkeypatch):
    """The tutorial example: ReduceLROnPlateau(..., monitor=custom_metric); step(val_loss, val_acc)."""
    monkeypatch.setattr(fused_lr.lr_scheduler.plateau, "_host_can_read", lambda t: False)

    def custom_metric(val_loss, val_acc):
        return val_loss * (1 - val_acc)

    a, b = _pair()
    sa = stock.ReduceLROnPlateau(a, patience=5, factor=0.2, mode="min")
    sb = fused.ReduceLROnPlateau(b, patience=5, factor=0.2, mode="min", monitor=custom_metric)
    g = torch.Generator().manual_seed(0)
    for epoch in range(40):
        val_loss = torch.rand((), generator=g, dtype=torch.float64) + 0.5
        val_acc = torch.rand((), generator=g, dtype=torch.float64) * 0.1 + 0.8
        sa.step(float(custom_metric(val_loss, val_acc)))
        with _device_state(sb, val_loss, val_acc):
            sb.step(val_loss, val_acc)
        _assert_same_state(sa, sb, f"epoch {epoch}")
    assert sb.get_last_lr()[0] < BASE[0]  # the sequence did plateau and reduce


def test_state_dict_round_trip_and_stock_interchange():
    a, b = _pair()
    sa = stock.ReduceLROnPlateau(a, patience=1, cooldown=2, min_lr=[1e-3, 1e-4])
    sb = fused.ReduceLROnPlateau(b, patience=1, cooldown=2, min_lr=[1e-3, 1e-4])
    seq = [1.0, 0.9, 0.95, 0.96, 0.97, 0.8, 0.85, 0.9, 0.91]
    for m in seq[:5]:
        sa.step(m)
        sb.step(m)
    # stock -> fused, fused -> fused, then continue all three in lockstep.
    a2, b2 = _pair()
    b2.load_state_dict(a.state_dict())
    s_from_stock = fused.ReduceLROnPlateau(b2)
    s_from_stock.load_state_dict(sa.state_dict())
    b3 = _pair()[1]
    b3.load_state_dict(b.state_dict())
    s_from_fused = fused.ReduceLROnPlateau(b3)
    s_from_fused.load_state_dict(sb.state_dict())
    # fused -> stock
    a4 = _pair()[0]
    a4.load_state_dict(b.state_dict())
    s_stock_from_fused = stock.ReduceLROnPlateau(a4)
    s_stock_from_fused.load_state_dict(sb.state_dict())
    for m in seq[5:]:
        for s in (sa, sb, s_from_stock, s_from_fused, s_stock_from_fused):
            s.step(m)
        for s in (sb, s_from_stock, s_from_fused):
            _assert_same_state(sa, s, f"metric {m}")
        assert s_stock_from_fused.get_last_lr() == sa.get_last_lr()


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(factor=1.0), ValueError, "Factor should be < 1.0"),
        (dict(factor=1.5), ValueError, "Factor should be < 1.0"),
        (dict(mode="mean"), ValueError, "mode 'mean' is unknown"),
        (dict(threshold_mode="pct"), ValueError, "threshold mode 'pct' is unknown"),
        (dict(patience=-1), ValueError, "patience must be >= 0, got -1"),
        (dict(cooldown=-2), ValueError, "cooldown must be >= 0, got -2"),
        (dict(min_lr=[0.0]), ValueError, "expected 2 min_lrs, got 1"),
        (dict(min_lr=-1.0), ValueError, "min_lr must be >= 0"),
        (dict(monitor=3), TypeError, "monitor must be callable"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    _, b = _pair()
    before = b.lr_tensor.clone()
    with pytest.raises(exc, match=match):
        fused.ReduceLROnPlateau(b, **kwargs)
    assert torch.equal(before, b.lr_tensor)


def test_two_metrics_without_monitor_is_an_error():
    _, b = _pair()
    s = fused.ReduceLROnPlateau(b)
    with pytest.raises(TypeError, match="without a monitor"):
        s.step(1.0, 0.5)
    with pytest.raises(ValueError, match="one element"):
        s.step(torch.ones(3))
    assert s.last_epoch == 0


def test_is_a_torch_reduce_lr_on_plateau():
    """Frameworks (Lightning) check isinstance against torch's class to require a monitor."""
    _, b = _pair()
    assert isinstance(fused.ReduceLROnPlateau(b), stock.ReduceLROnPlateau)

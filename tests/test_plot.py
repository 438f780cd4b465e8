"""plot_schedule / schedule_values: the curve drawn is the curve trained with."""

from __future__ import annotations

import pytest
import torch
import torch.optim.lr_scheduler as stock

import fused_lr
import fused_lr.lr_scheduler as fused


def _opt(cls=fused_lr.FusedSGD):
    return cls(
        [{"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.1}, {"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.02}]
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda o: fused.CosineAnnealingLR(o, T_max=10),
        lambda o: fused.MultiStepLR(o, [3, 8]),
        lambda o: fused.LambdaLR(o, [lambda e: 0.9**e, lambda e: 1.0 if e < 4 else 0.5]),
        lambda o: fused.WarmupStableDecayLR(o, 3, 30, 10, decay_shape="cosine"),
        # Tabulated parts with a small horizon: the values must run past it (the table grows).
        lambda o: fused.MultiplicativeLR(o, lambda e: 0.97, horizon=8),
        lambda o: fused.ChainedScheduler([fused.LinearLR(o, 0.1, total_iters=5), fused.CosineAnnealingLR(o, 20)], horizon=8),
        lambda o: fused.SequentialLR(
            o, [fused.LinearLR(o, 0.1, total_iters=3), fused.LambdaLR(o, lambda e: 0.99**e if e < 30 else 0.5, horizon=8)], [3]
        ),
        lambda o: fused.PerGroupLR(
            o, [fused.OneCycleLR(o, 0.5, total_steps=60), fused.CyclicLR(o, 0.01, 0.1, 4, cycle_momentum=False)]
        ),
    ],
)
def test_values_equal_a_real_run_and_leave_the_scheduler_alone(make):
    opt = _opt()
    sched = make(opt)
    horizon = getattr(sched, "horizon", None)
    initial = opt.lr_tensor.tolist()
    values = fused_lr.schedule_values(sched, 50)
    assert sched.last_epoch == 0 and opt.lr_tensor.tolist() == initial and getattr(sched, "horizon", None) == horizon
    for t in range(50):
        assert values[t] == pytest.approx(opt.lr_tensor.tolist(), rel=1e-15, abs=0), t
        opt.step()
        sched.step()


def test_stock_scheduler_values():
    opt = _opt(torch.optim.SGD)
    sched = stock.OneCycleLR(opt, max_lr=[1.0, 0.5], total_steps=20)
    values = fused_lr.schedule_values(sched, 20)
    assert sched.last_epoch == 0
    for t in range(20):
        assert values[t] == pytest.approx([g["lr"] for g in opt.param_groups], rel=1e-15)
        opt.step()
        sched.step()


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    sched = fused.WarmupCosineLR(_opt(), 5, 50, 0.1)
    path = tmp_path / "schedule.png"
    ax = fused_lr.plot_schedule(sched, 60, path=str(path))
    assert path.stat().st_size > 1000
    assert len(ax.lines) == 2


def test_plateau_cannot_be_drawn():
    with pytest.raises(TypeError, match="cannot be drawn ahead"):
        fused_lr.schedule_values(fused.ReduceLROnPlateau(_opt()), 10)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        fused_lr.schedule_values(fused.StepLR(_opt(), 2), 0)
